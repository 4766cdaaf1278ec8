"""Data: the HumanAttData datalist format and layer, the data sets' label sets, proposals and
the datalist writer, ground-truth readers, the synthetic benchmark."""
from mlic.data.annotations import read_ground_truth  # noqa: F401
from mlic.data.datalist import (Datalist, DatalistError, ImageReadError, parse_datalist_text,  # noqa: F401
                                read_datalist)
from mlic.data.human_att_data import (BatchSpec, HumanAttBatch, HumanAttBatchSampler,  # noqa: F401
                                      HumanAttDataConfig, HumanAttDataLoader, HumanAttDataset,
                                      build_loader)
