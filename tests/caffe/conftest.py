import pytest

from tests.caffe.helpers import PORT_NET, train
from tests.ports.helpers import SMALL


@pytest.fixture(scope="session")
def kd_data(tmp_path_factory):
    """A few synthetic images and datalists at the small nets' sizes (tests/ports/helpers.SMALL)."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(str(out), SyntheticConfig(num_train=4, num_test=3, bbox_num=SMALL["rois"],
                                                      image_size=SMALL["input_size"], num_classes=SMALL["classes"],
                                                      seed=8))


@pytest.fixture(scope="session")
def kd_teacher(kd_data, tmp_path_factory):
    """A WSDDN trained by --stage wsddn (two steps, so that it differs from any init): final.pt."""
    return train(kd_data, tmp_path_factory.mktemp("teacher"), "--stage", "wsddn", *PORT_NET)
