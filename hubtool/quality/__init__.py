"""Everything hubtool measures against the fp16 model, in one place:

- texts.py: the calibration / held-out text sources and how they are named when published;
- reference.py, stream.py: the cached fp16 reference and streaming evaluation (one decoder block
  in memory at a time);
- metrics.py: perplexity, KL divergence and top-1 agreement from aligned logits;
- results.py: the `quality.json` rows that cards and the release summary read;
- gates.py: floors on those rows that fail a release before anything is pushed;
- table.py: the rows as the fixed-width table `release` and `demo` print;
- sensitivity.py: per-layer output sensitivity (Fisher) that tuned GGUF mixes are chosen by.

Import the submodules directly: this package imports nothing itself, so card and CLI code that
reads results or prints tables never loads numpy or torch.
"""
