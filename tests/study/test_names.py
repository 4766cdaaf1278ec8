"""The readable names of the jobs: every arm, stage and prefix gets one, in the README's words."""
from mlic.study import names
from mlic.study.pipeline import ALL_ARMS, BASELINE, BASELINE_EQUAL, DECIDE_ARMS, PAPER_L2, RELEASED, Arm


def test_the_demo_models_have_the_readmes_names():
    assert names.name("teacher") == "teacher (WSDDN)"
    assert names.name(RELEASED.key) == "student, KD as released (soft cross-entropy)"
    assert names.name(PAPER_L2.key) == "student, KD with the paper's L2 loss"
    assert names.name(BASELINE) == "student without KD"
    assert names.name(RELEASED.stage1_key) == "KD stage 1 (feature level), as released"
    assert names.name("pretrain") == "ImageNet stand-in"


def test_every_arm_has_its_own_name_saying_what_it_changes():
    arms = ALL_ARMS + DECIDE_ARMS
    by_name = {}
    for arm in arms:
        n = names.name(arm.key)
        assert n != arm.key and n.startswith("student, KD")
        by_name.setdefault(n, set()).add(arm.key)
    assert all(len(keys) == 1 for keys in by_name.values()), by_name
    every = names.name(Arm("l2", "frozen", "convs", "topk").key)
    for change in ("L2 loss", "frozen teacher", "convs only", "top-k regions"):
        assert change in every
    assert names.name(Arm(stage1="skip").key) == "student, KD without stage 1"
    assert names.name(Arm(soft_scale=1.0).key).endswith("soft-scale lr_mult 1")
    stage1 = {names.name(a.stage1_key) for a in arms if a.stage1_key}
    assert len(stage1) == len({a.stage1_key for a in arms if a.stage1_key})


def test_prefixed_keys_and_unknown_keys():
    assert names.name(f"seed3/{BASELINE}") == "seed 3: student without KD"
    assert names.name(f"lr0.01/{RELEASED.key}") == "student, KD as released (soft cross-entropy), at base rate 0.01"
    assert names.name(f"budget/{BASELINE}-1400") == "student without KD, 1400 iterations in all"
    assert names.name(BASELINE_EQUAL).startswith("student without KD, trained as long as stage 1 + stage 2")
    assert "validation" in names.name("tune/teacher_lr0.003/teacher")
    assert names.name("kd-nonsense") == "kd-nonsense" == names.with_key("kd-nonsense")
    assert names.with_key(BASELINE) == "student without KD [nokd]"
