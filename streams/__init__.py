"""Swatch's streaming side: configuration, Avro codec, embedded dev stack, topics and the CLI."""

__version__ = "0.1.0"
