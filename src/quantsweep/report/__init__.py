"""Summary table, recommendation, plots and a single-file HTML report."""
