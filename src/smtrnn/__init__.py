"""smtrnn: Supervised Memory Training (SMT) and DAgger Memory Training (DMT) for recurrent networks.

    import smtrnn

    rnn = smtrnn.load("runs/brown-smt")          # the trained RNN alone; rnn.step, rnn.stream(), rnn(tokens)
    smtrnn.generate(rnn, "The ", steps=100)       # Samples(tokens, text)
    smtrnn.export("runs/brown-smt", "exported")  # config.json + model.safetensors; smtrnn.load_export("exported")

These names come from smtrnn.api, imported on first use so that ``import smtrnn`` stays light.
"""

__version__ = "0.1.0"

_API = ("load", "generate", "export", "load_export", "Stream", "TrainedRNN", "Samples")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from smtrnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'smtrnn' has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *_API])
