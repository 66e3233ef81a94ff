"""`swatch bench model|pipeline|baseline|soak|all`: the speed and memory of Swatch, measured side by side.

- :mod:`~streams.perf.procfs`: CPU per thread group, RSS and descriptors from /proc, and the CPU
  other processes took during a run;
- :mod:`~streams.perf.modelbench`: model-only throughput per runtime, threads and batch size, on
  preprocessed tensors (the ceiling the pipeline is measured against);
- :mod:`~streams.perf.workload`: the catalog, the image server and the listing plans (cold, dup80,
  soak mixes);
- :mod:`~streams.perf.pipeline`: the real worker, in its own process, through the real broker and
  Redis: throughput, latency from each listing's event time to its attribute event, CPU by thread
  group, RSS;
- :mod:`~streams.perf.baseline` (with :mod:`~streams.perf.naive`): the obvious faust-streaming
  agent on the same broker, images and model;
- :mod:`~streams.perf.suite`: ``bench all``: everything in one run, with the ratios.
"""
