"""Reading results, torch-free: the paper's tables, the report, the claims and their inference, the methods, fair
and variant studies, the findings, and the figures (``plots``). Stands on ``core`` only (``plots.architecture`` and
``plots.dataset`` draw the model and the data, imported on first use)."""
