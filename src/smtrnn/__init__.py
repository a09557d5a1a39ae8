"""smtrnn: Supervised Memory Training (SMT) and DAgger Memory Training (DMT) for recurrent networks."""

__version__ = "0.1.0"
