"""1:N search of IoM codes: bit-sliced packing (:mod:`iom.search.packing`), the in-process
gallery (:mod:`iom.search.gallery`), where a gallery lives (:mod:`iom.search.galleries`) and the
gallery sharded over a Ray cluster (:mod:`iom.search.sharded`)."""
