"""Small demonstrations runnable on a laptop CPU."""
import time

import torch


def kernels_demo(device: str = "cpu", seed: int = 0) -> int:
    from mlic import ops
    from mlic.ops import reference as ref

    torch.manual_seed(seed)
    print(f"mlic ops backend on {device}: {ops.backend_for(device)}")
    feats = torch.randn(2, 64, 42, 42, device=device)
    k = 200
    boxes = torch.rand(k, 4, device=device) * 600
    rois = torch.cat([torch.randint(0, 2, (k, 1), device=device).float(), torch.minimum(boxes[:, :2], boxes[:, 2:]),
                      torch.maximum(boxes[:, :2], boxes[:, 2:]), torch.rand(k, 1, device=device)], 1)
    failures = 0

    def report(name, ours, theirs):
        nonlocal failures
        err = (ours - theirs).abs().max().item()
        ok = err <= 1e-5 * (1 + theirs.abs().max().item())
        failures += not ok
        print(f"  {name:<28} max |ours - reference| = {err:.3g}  {'ok' if ok else 'MISMATCH'}")

    t0 = time.perf_counter()
    out, _ = ops.roi_pool(feats, rois, 7, 7, 1 / 16)
    t1 = time.perf_counter()
    report("roi_pool 7x7 (200 RoIs)", out, ref.roi_pool_ref(feats, rois, 7, 7, 1 / 16)[0])
    report("spp (3 levels, max)", ops.spp(feats, 3), ref.spp_ref(feats, 3))
    cls, det = torch.randn(2, 500, 80, device=device), torch.randn(2, 500, 80, device=device)
    report("wsddn_two_stream", ops.wsddn_two_stream(cls, det)[0], ref.wsddn_two_stream_ref(cls, det)[0])
    print(f"  roi_pool forward took {1e3 * (t1 - t0):.1f} ms")
    print("all ops agree with the reference" if not failures else f"{failures} op(s) disagree")
    return 1 if failures else 0
