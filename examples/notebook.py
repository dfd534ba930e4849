# %% [markdown]
# # fedray from Python
# A notebook-style walk through the Python API (run it as a script, or cell by cell in
# Jupyter or VS Code). Everything runs in this process (`executors.backend=local`): no Ray.

# %%
import fedray

cfg = fedray.config(
    None,  # the defaults: FedBuff on Synthetic(1, 1), 50 clients with lognormal speeds
    executors={"backend": "local"},
    stop={"max_versions": 20},
    eval={"every": 5},
    **{"algorithm.buffer_size": 5, "out_dir": ""},
)
print(cfg.algorithm)

# %%
result = fedray.run(cfg, write=False)
print(result.metrics[["version", "sim_time", "accuracy", "loss"]])
print("final accuracy", result.summary["final_accuracy"], "in", result.summary["sim_time"], "virtual s")

# %%
# The same experiment with another algorithm: a config is data, changed with the same checks.
fedavg = fedray.run(cfg, write=False, algorithm={"name": "fedavg", "clients_per_round": 10})
print("fedavg", fedavg.summary["final_accuracy"], "fedbuff", result.summary["final_accuracy"])

# %%
# The final model as a torch module of the workload's architecture.
model = result.model
print(model)

# %%
# A mistake is one line, as on the command line.
try:
    fedray.config(None, **{"trainng.lr": 0.1})
except fedray.ConfigError as e:
    print("error:", e)
