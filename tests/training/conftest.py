import pytest


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """12 training and 6 test images of the synthetic benchmark, 4 classes, 6 boxes each."""
    from mlic.data.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(str(out), SyntheticConfig(num_train=12, num_test=6, bbox_num=6, image_size=64,
                                                      num_classes=4, seed=3))
