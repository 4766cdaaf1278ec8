"""Scoring one trained stage on a datalist (single forward, as the paper tests)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")


def evaluate_weights(weights: str, datalist: str, root_folder: str = "", gt: Optional[str] = None,
                     batch_size: int = 16, device: str = "cpu") -> Dict[str, float]:
    """mAP, CF1, OF1 and their top-3 forms; CorLoc and detection mAP too for a teacher
    given the ground-truth boxes (`gt`, the benchmark's gt_<split>.json)."""
    from mlic.data import HumanAttDataConfig, HumanAttDataset, read_datalist
    from mlic.evaluation import evaluate_detection, evaluate_multilabel
    from mlic.training.test import gt_from_synthetic, load_trained, predict_dataset
    from mlic.training.train import BGR_MEAN

    task, meta = load_trained(weights, device)
    net = meta["net"]
    dl = read_datalist(datalist, att_num=net["num_classes"], bbox_num=net["num_rois"], root_folder=root_folder)
    size = net["input_size"]
    cfg = HumanAttDataConfig(source=datalist, root_folder=root_folder, batch_size=batch_size, new_width=size,
                             new_height=size, att_num=dl.att_num, bbox_num=dl.bbox_num, mean_values=BGR_MEAN,
                             scale=meta.get("input_scale", 1.0))
    dataset = HumanAttDataset(dl, cfg)
    scores, labels, regions = predict_dataset(task, dataset, batch_size, device)
    rep = evaluate_multilabel(scores, labels).to_dict()
    out = {k: float(rep[k]) for k in METRICS}
    if regions is not None and gt:
        truth, _ = gt_from_synthetic(gt, scores.shape[0])
        boxes = [np.asarray(dl.boxes[i])[:, :4] for i in range(len(dl))]
        det = evaluate_detection(list(regions), boxes, truth).to_dict()
        out.update(CorLoc=float(det["CorLoc"]), det_mAP=float(det["det_mAP"]))
    return out
