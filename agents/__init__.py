"""The Zhisuan node agent: accelerator discovery, telemetry, health and Prometheus export on every node.

* :mod:`agents.shims` — one adapter per vendor behind one interface (NVML, npu-smi, cnmon, amdsmi, hy-smi,
  xpu-smi, ixsmi, mx-smi, mthreads-gmi) plus emulated devices for machines without accelerators;
* :mod:`agents.health` — fatal XIDs, uncorrectable ECC, row-remap failure → device unhealthy;
* :mod:`agents.protocol` — the register/heartbeat wire contract the API implements;
* :mod:`agents.agent` — the loop (sampling, bounded buffering, backoff) and the node's Ray declaration;
* :mod:`agents.exporter` — ``zhisuan_device_*`` and dcgm-compatible ``DCGM_FI_DEV_*`` metrics;
* :mod:`agents.cli` — ``zhisuan agent run | discover | ray-spec``.
"""
