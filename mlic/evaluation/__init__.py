"""Evaluation: multi-label classification metrics, weakly supervised detection metrics,
and per-image score files (SPEC section 6)."""
from mlic.evaluation.classification import (  # noqa: F401
    AP_MODES,
    TIE_POLICIES,
    MultiLabelReport,
    ThresholdMetrics,
    average_precision,
    evaluate_multilabel,
    mean_average_precision,
    precision_recall_at_ranks,
    predictions,
    threshold_metrics,
    tie_warning,
    tied_fraction,
)
from mlic.evaluation.detection import (  # noqa: F401
    DetectionReport,
    box_iou,
    corloc,
    corloc_references,
    detection_average_precision,
    evaluate_detection,
    nms,
)
from mlic.evaluation.scores_io import ScoreFile, load_scores, save_scores  # noqa: F401
