#!/usr/bin/env python
"""Train a stage of the method on datalists (Caffe SGD semantics).

  python tools/train.py --stage wsddn --datalist train.txt --test-datalist test.txt \
      --weights VGG_ILSVRC_16_layers.caffemodel --out runs/teacher
  python tools/train.py --stage stage1 --teacher runs/teacher/final.pt ... --out runs/stage1
  torchrun --nproc_per_node 8 tools/train.py ...        # one process per GPU (NCCL), or gloo on CPU

With no arguments it runs the embedded demo (tools/demo.py).
"""
import sys

if __name__ == "__main__":
    from mlic.portable import restart_if_requested

    restart_if_requested()
    from mlic.cli.train import main

    sys.exit(main())
