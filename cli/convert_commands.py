"""Commands: filled in by the module owner."""
COMMANDS = []
