"""Caffe interop: the prototxt/caffemodel schema, Caffe network definitions run as PyTorch
modules, weight conversion, and comparison against recorded Caffe outputs.

    net = CaffeNet("wsddn_train.prototxt", "TRAIN", weights="vgg16.caffemodel")
    out = net(data=images, label_roi=label_roi)        # blobs by name -> output blobs
    net.blobs["roi_pooling"], net.params["fc6"]        # every blob; params by layer name
    obj = net.forward_backward(data=..., label_roi=...)  # sum of loss_weight * loss, then backward

    load_caffemodel(net, path) / save_caffemodel(net, path)      # by layer name, shape-checked
    caffemodel_to_param_dict(path) / load_param_dict(net, d)     # {'layer/i': tensor}
    read_weight_file(path)      # any weight file (caffemodel, .pt, train.py checkpoint, student export,
                                # torchvision:vgg16) as {'layer/i': tensor} under Caffe names
    load_weights(net, path)     # any of them into a net by layer name
    initialize_weights(model, "a.caffemodel,b.pt", teacher="wsddn.pt")   # what --weights/--teacher do

    from mlic.solver import CaffeSGD                             # Caffe SGD semantics
    opt = CaffeSGD(net.param_groups(), base_lr=5e-5, momentum=0.9, weight_decay=5e-4)
    from mlic.engine.caffe_solver import Solver                  # a solver.prototxt, run by the loop

    from mlic.compare import compare_case                        # tools/compare_caffe.py
"""
from mlic.caffe.errors import CaffeError, CaffemodelError, NetBuildError, PrototxtError  # noqa: F401
from mlic.caffe.io import NetSpec, load_net_spec, read_caffemodel, read_solver  # noqa: F401
from mlic.caffe.layers import supported_layer_types  # noqa: F401
from mlic.caffe.net import CaffeNet  # noqa: F401
from mlic.caffe.weight_files import (caffemodel_to_param_dict, net_to_caffemodel, read_weight_file,  # noqa: F401
                                     save_caffemodel, save_param_dict, split_sources)
from mlic.caffe.weights import (LoadReport, initialize_weights, load_caffemodel, load_param_dict,  # noqa: F401
                                load_weights)
