"""The Ray runtime: connecting to Ray, the server actor that hosts the loop, the executor
actors and their pool (the Ray backend). The only part of fedray that imports Ray, with
engine/tune.py and tune_spaces/."""
