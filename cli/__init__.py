"""Thin click commands over occsynth and bcnet: parse options, call one function, print its report."""
