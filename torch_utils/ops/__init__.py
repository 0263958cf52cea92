"""Image ops used by the generators and discriminators, each with a pure-PyTorch reference path."""
