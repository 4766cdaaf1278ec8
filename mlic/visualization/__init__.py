"""PNG figures (Agg canvas): qualitative results, precision-recall curves, training curves."""
from mlic.visualization.figures import (  # noqa: F401
    plot_pr_comparison,
    plot_pr_curves,
    plot_qualitative,
    plot_training_curves,
    pr_comparison_figure,
    qualitative_figure,
    read_csv_log,
    training_curves_figure,
)
