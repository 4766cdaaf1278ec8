"""One forward of the full-size released deploy net (VGG16 at 672x672, 500 RoIs, 80
classes) against the port: the only full-size run of the port tests."""
import pytest
import torch

from mlic.caffe import CaffeNet
from mlic.caffe.weights import load_param_dict
from prototxt_ports import WSDDN, NetConfig
from tests.ports.helpers import close


@pytest.mark.slow
def test_full_size_wsddn_deploy(prototxt_ref):
    torch.manual_seed(0)
    port = WSDDN(NetConfig()).eval()
    net = CaffeNet(str(prototxt_ref / "wsddn_deploy.prototxt"), "TEST")
    assert load_param_dict(net, port.param_dict(), strict=True).complete
    g = torch.Generator().manual_seed(0)
    data = torch.randn(1, 3, 672, 672, generator=g) * 50
    x1 = torch.randint(0, 600, (1, 500), generator=g).float()
    y1 = torch.randint(0, 600, (1, 500), generator=g).float()
    x2 = (x1 + torch.randint(16, 300, (1, 500), generator=g)).clamp(max=671)
    y2 = (y1 + torch.randint(16, 300, (1, 500), generator=g)).clamp(max=671)
    proposals = torch.stack([x1, y1, x2, y2, torch.rand(1, 500, generator=g)], 2).reshape(1, 2500, 1, 1)
    with torch.no_grad():
        out = port(data, list_roi=proposals)
        net(imagedata=data, proposaldata=proposals)
    assert out["image_level_score"].shape == (1, 80) and out["proposal_class_score"].shape == (1, 500, 80)
    for name in ("conv5_3", "roi_pooling", "fc6", "fc7", "fc8_c", "fc8_d", "class_score", "proposal_score",
                 "proposal_class_score", "image_level_score"):
        close(out[name], net.blobs[name], what=name)
