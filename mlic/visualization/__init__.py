"""PNG figures (Agg canvas): qualitative results, precision-recall curves, training curves."""
from mlic.visualization.figures import (  # noqa: F401
    plot_pr_curves,
    plot_qualitative,
    plot_training_curves,
    read_csv_log,
)
