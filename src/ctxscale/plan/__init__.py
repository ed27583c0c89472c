"""Planning a workflow config's jobs before they run: their GPUs and memory, and what they will cost.

- ``architecture``: a checkpoint's shapes and weight size from its ``config.json`` (or the hub's, or the
  package's shipped copy), what every plan reads;
- ``evaluation``: the GPU plan of each evaluate job (``max_model_len``, tensor-parallel size, GPUs) against
  vLLM's start condition; what the evaluate rule and step call;
- ``extension``: the memory model and GPU count of each extend job (FSDP2 training), and the extend rule's
  ``gpu``/``mem_mb``;
- ``cost``: the tokens and roofline GPU-hours of every evaluate and extend job (``ctxscale plan --cost``);
- ``cli`` (and ``__main__``): ``ctxscale plan``, the only module that imports all of the above.

Imports run one way: architecture <- evaluation <- extension, cost <- cli. Nothing is imported here, so that
importing one of them (the workflow's rules do, for every job) loads only what it needs.
"""
