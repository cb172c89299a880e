"""The Ray executor, by concern: ``bundles`` (what each rank reserves and where, pure), ``gang`` (one phase from
many ranks), ``records`` (what survives in Ray's GCS key-value store), ``node`` (what runs on the nodes: the node
supervisor and the rank processes; standard library and Ray only) and ``executor`` (:class:`RayExecutor`)."""
