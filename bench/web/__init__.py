"""The HTTP benches' shared pieces: the requests they send to ``iomface serve`` (:mod:`.api`)
and the load test's clients (:mod:`.load`)."""
