"""The Ray-free simulation core: virtual clock, keyed random streams, delay models, jobs
and their costs, the server queue, the loop and its state, checkpoints and the recorder.
No Ray and no torch are imported here."""
