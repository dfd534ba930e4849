"""What a run leaves behind: result files, plots, and the tables of studies and sweeps."""
