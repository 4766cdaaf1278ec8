"""The subset of Caffe's protobuf schema this project reads and writes.

The descriptors are built in Python (no protoc, no generated code). Field numbers are
BVLC Caffe's, plus the authors' fork additions (``interp_param = 147``,
``human_att_data_param = 148``, ``roi_pooling_param = 149``). Binary caffemodels may
carry fields outside this subset; protobuf keeps them as unknown fields. Text files
(prototxt) may only use the fields listed here: anything else is a parse error.

Message classes are exposed as module attributes (``NetParameter``, ``LayerParameter``,
``BlobProto``, ``SolverParameter``, ...).
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FD.TYPE_DOUBLE,
    "float": _FD.TYPE_FLOAT,
    "int64": _FD.TYPE_INT64,
    "uint64": _FD.TYPE_UINT64,
    "int32": _FD.TYPE_INT32,
    "uint32": _FD.TYPE_UINT32,
    "bool": _FD.TYPE_BOOL,
    "string": _FD.TYPE_STRING,
    "bytes": _FD.TYPE_BYTES,
}

PACKAGE = "caffe"

# Enums: name -> [(value name, number)]. Nested enums are written "Message.Enum".
_ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "FillerParameter.VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "ParamSpec.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "LossParameter.NormalizationMode": [("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2), ("NONE", 3)],
    "ConvolutionParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "PoolingParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "PoolingParameter.RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "ReLUParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SigmoidParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SoftmaxParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SPPParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "SPPParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SolverParameter.SnapshotFormat": [("HDF5", 0), ("BINARYPROTO", 1)],
    "SolverParameter.SolverMode": [("CPU", 0), ("GPU", 1)],
    "SolverParameter.SolverType": [
        ("SGD", 0), ("NESTEROV", 1), ("ADAGRAD", 2), ("RMSPROP", 3), ("ADADELTA", 4), ("ADAM", 5),
    ],
    "V1LayerParameter.LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39),
        ("DROPOUT", 6), ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38),
        ("FLATTEN", 8), ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11),
        ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15),
        ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17),
        ("POWER", 26), ("RELU", 18), ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
        ("SILENCE", 36), ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33),
        ("TANH", 23), ("WINDOW_DATA", 24), ("THRESHOLD", 31),
    ],
    "V1LayerParameter.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "V0LayerParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
}

# Messages: name -> [(label, type, field name, number, options)]. label: "o" optional,
# "r" repeated. options: default value and/or packed=True.
_O, _R = "o", "r"
_MESSAGES = {
    "BlobShape": [(_R, "int64", "dim", 1, {"packed": True})],
    "BlobProto": [
        (_O, "BlobShape", "shape", 7, {}),
        (_R, "float", "data", 5, {"packed": True}),
        (_R, "float", "diff", 6, {"packed": True}),
        (_R, "double", "double_data", 8, {"packed": True}),
        (_R, "double", "double_diff", 9, {"packed": True}),
        (_O, "int32", "num", 1, {"default": 0}),
        (_O, "int32", "channels", 2, {"default": 0}),
        (_O, "int32", "height", 3, {"default": 0}),
        (_O, "int32", "width", 4, {"default": 0}),
    ],
    "BlobProtoVector": [(_R, "BlobProto", "blobs", 1, {})],
    "FillerParameter": [
        (_O, "string", "type", 1, {"default": "constant"}),
        (_O, "float", "value", 2, {"default": 0}),
        (_O, "float", "min", 3, {"default": 0}),
        (_O, "float", "max", 4, {"default": 1}),
        (_O, "float", "mean", 5, {"default": 0}),
        (_O, "float", "std", 6, {"default": 1}),
        (_O, "int32", "sparse", 7, {"default": -1}),
        (_O, "FillerParameter.VarianceNorm", "variance_norm", 8, {"default": "FAN_IN"}),
    ],
    "NetParameter": [
        (_O, "string", "name", 1, {}),
        (_R, "string", "input", 3, {}),
        (_R, "BlobShape", "input_shape", 8, {}),
        (_R, "int32", "input_dim", 4, {}),
        (_O, "bool", "force_backward", 5, {"default": False}),
        (_O, "NetState", "state", 6, {}),
        (_O, "bool", "debug_info", 7, {"default": False}),
        (_R, "LayerParameter", "layer", 100, {}),
        (_R, "V1LayerParameter", "layers", 2, {}),
    ],
    "SolverParameter": [
        (_O, "string", "net", 24, {}),
        (_O, "NetParameter", "net_param", 25, {}),
        (_O, "string", "train_net", 1, {}),
        (_R, "string", "test_net", 2, {}),
        (_O, "NetParameter", "train_net_param", 21, {}),
        (_R, "NetParameter", "test_net_param", 22, {}),
        (_O, "NetState", "train_state", 26, {}),
        (_R, "NetState", "test_state", 27, {}),
        (_R, "int32", "test_iter", 3, {}),
        (_O, "int32", "test_interval", 4, {"default": 0}),
        (_O, "bool", "test_compute_loss", 19, {"default": False}),
        (_O, "bool", "test_initialization", 32, {"default": True}),
        (_O, "float", "base_lr", 5, {}),
        (_O, "int32", "display", 6, {}),
        (_O, "int32", "average_loss", 33, {"default": 1}),
        (_O, "int32", "max_iter", 7, {}),
        (_O, "int32", "iter_size", 36, {"default": 1}),
        (_O, "string", "lr_policy", 8, {}),
        (_O, "float", "gamma", 9, {}),
        (_O, "float", "power", 10, {}),
        (_O, "float", "momentum", 11, {}),
        (_O, "float", "weight_decay", 12, {}),
        (_O, "string", "regularization_type", 29, {"default": "L2"}),
        (_O, "int32", "stepsize", 13, {}),
        (_R, "int32", "stepvalue", 34, {}),
        (_O, "float", "clip_gradients", 35, {"default": -1}),
        (_O, "int32", "snapshot", 14, {"default": 0}),
        (_O, "string", "snapshot_prefix", 15, {}),
        (_O, "bool", "snapshot_diff", 16, {"default": False}),
        (_O, "SolverParameter.SnapshotFormat", "snapshot_format", 37, {"default": "BINARYPROTO"}),
        (_O, "SolverParameter.SolverMode", "solver_mode", 17, {"default": "GPU"}),
        (_O, "int32", "device_id", 18, {"default": 0}),
        (_O, "int64", "random_seed", 20, {"default": -1}),
        (_O, "string", "type", 40, {"default": "SGD"}),
        (_O, "float", "delta", 31, {"default": 1e-8}),
        (_O, "float", "momentum2", 39, {"default": 0.999}),
        (_O, "float", "rms_decay", 38, {"default": 0.99}),
        (_O, "bool", "debug_info", 23, {"default": False}),
        (_O, "bool", "snapshot_after_train", 28, {"default": True}),
        (_O, "SolverParameter.SolverType", "solver_type", 30, {"default": "SGD"}),
        (_O, "bool", "layer_wise_reduce", 41, {"default": True}),
        (_R, "string", "weights", 42, {}),
    ],
    "SolverState": [
        (_O, "int32", "iter", 1, {}),
        (_O, "string", "learned_net", 2, {}),
        (_R, "BlobProto", "history", 3, {}),
        (_O, "int32", "current_step", 4, {"default": 0}),
    ],
    "NetState": [
        (_O, "Phase", "phase", 1, {"default": "TEST"}),
        (_O, "int32", "level", 2, {"default": 0}),
        (_R, "string", "stage", 3, {}),
    ],
    "NetStateRule": [
        (_O, "Phase", "phase", 1, {}),
        (_O, "int32", "min_level", 2, {}),
        (_O, "int32", "max_level", 3, {}),
        (_R, "string", "stage", 4, {}),
        (_R, "string", "not_stage", 5, {}),
    ],
    "ParamSpec": [
        (_O, "string", "name", 1, {}),
        (_O, "ParamSpec.DimCheckMode", "share_mode", 2, {}),
        (_O, "float", "lr_mult", 3, {"default": 1.0}),
        (_O, "float", "decay_mult", 4, {"default": 1.0}),
    ],
    "LayerParameter": [
        (_O, "string", "name", 1, {}),
        (_O, "string", "type", 2, {}),
        (_R, "string", "bottom", 3, {}),
        (_R, "string", "top", 4, {}),
        (_O, "Phase", "phase", 10, {}),
        (_R, "float", "loss_weight", 5, {}),
        (_R, "ParamSpec", "param", 6, {}),
        (_R, "BlobProto", "blobs", 7, {}),
        (_R, "bool", "propagate_down", 11, {}),
        (_R, "NetStateRule", "include", 8, {}),
        (_R, "NetStateRule", "exclude", 9, {}),
        (_O, "TransformationParameter", "transform_param", 100, {}),
        (_O, "LossParameter", "loss_param", 101, {}),
        (_O, "ConcatParameter", "concat_param", 104, {}),
        (_O, "ConvolutionParameter", "convolution_param", 106, {}),
        (_O, "DropoutParameter", "dropout_param", 108, {}),
        (_O, "EltwiseParameter", "eltwise_param", 110, {}),
        (_O, "InnerProductParameter", "inner_product_param", 117, {}),
        (_O, "PoolingParameter", "pooling_param", 121, {}),
        (_O, "ReLUParameter", "relu_param", 123, {}),
        (_O, "SigmoidParameter", "sigmoid_param", 124, {}),
        (_O, "SoftmaxParameter", "softmax_param", 125, {}),
        (_O, "SliceParameter", "slice_param", 126, {}),
        (_O, "SPPParameter", "spp_param", 132, {}),
        (_O, "ReshapeParameter", "reshape_param", 133, {}),
        (_O, "FlattenParameter", "flatten_param", 135, {}),
        (_O, "ScaleParameter", "scale_param", 142, {}),
        (_O, "InputParameter", "input_param", 143, {}),
        # The authors' fork.
        (_O, "InterpParameter", "interp_param", 147, {}),
        (_O, "HumanAttDataParameter", "human_att_data_param", 148, {}),
        (_O, "ROIPoolingParameter", "roi_pooling_param", 149, {}),
    ],
    "TransformationParameter": [
        (_O, "float", "scale", 1, {"default": 1}),
        (_O, "bool", "mirror", 2, {"default": False}),
        (_O, "uint32", "crop_size", 3, {"default": 0}),
        (_O, "string", "mean_file", 4, {}),
        (_R, "float", "mean_value", 5, {}),
        (_O, "bool", "force_color", 6, {"default": False}),
        (_O, "bool", "force_gray", 7, {"default": False}),
    ],
    "LossParameter": [
        (_O, "int32", "ignore_label", 1, {}),
        (_O, "LossParameter.NormalizationMode", "normalization", 3, {"default": "VALID"}),
        (_O, "bool", "normalize", 2, {}),
    ],
    "ConcatParameter": [
        (_O, "int32", "axis", 2, {"default": 1}),
        (_O, "uint32", "concat_dim", 1, {"default": 1}),
    ],
    "ConvolutionParameter": [
        (_O, "uint32", "num_output", 1, {}),
        (_O, "bool", "bias_term", 2, {"default": True}),
        (_R, "uint32", "pad", 3, {}),
        (_R, "uint32", "kernel_size", 4, {}),
        (_R, "uint32", "stride", 6, {}),
        (_R, "uint32", "dilation", 18, {}),
        (_O, "uint32", "pad_h", 9, {"default": 0}),
        (_O, "uint32", "pad_w", 10, {"default": 0}),
        (_O, "uint32", "kernel_h", 11, {}),
        (_O, "uint32", "kernel_w", 12, {}),
        (_O, "uint32", "stride_h", 13, {}),
        (_O, "uint32", "stride_w", 14, {}),
        (_O, "uint32", "group", 5, {"default": 1}),
        (_O, "FillerParameter", "weight_filler", 7, {}),
        (_O, "FillerParameter", "bias_filler", 8, {}),
        (_O, "ConvolutionParameter.Engine", "engine", 15, {"default": "DEFAULT"}),
        (_O, "int32", "axis", 16, {"default": 1}),
        (_O, "bool", "force_nd_im2col", 17, {"default": False}),
    ],
    "DropoutParameter": [(_O, "float", "dropout_ratio", 1, {"default": 0.5})],
    "EltwiseParameter": [
        (_O, "EltwiseParameter.EltwiseOp", "operation", 1, {"default": "SUM"}),
        (_R, "float", "coeff", 2, {}),
        (_O, "bool", "stable_prod_grad", 3, {"default": True}),
    ],
    "FlattenParameter": [
        (_O, "int32", "axis", 1, {"default": 1}),
        (_O, "int32", "end_axis", 2, {"default": -1}),
    ],
    "InnerProductParameter": [
        (_O, "uint32", "num_output", 1, {}),
        (_O, "bool", "bias_term", 2, {"default": True}),
        (_O, "FillerParameter", "weight_filler", 3, {}),
        (_O, "FillerParameter", "bias_filler", 4, {}),
        (_O, "int32", "axis", 5, {"default": 1}),
        (_O, "bool", "transpose", 6, {"default": False}),
    ],
    "InputParameter": [(_R, "BlobShape", "shape", 1, {})],
    "PoolingParameter": [
        (_O, "PoolingParameter.PoolMethod", "pool", 1, {"default": "MAX"}),
        (_O, "uint32", "pad", 4, {"default": 0}),
        (_O, "uint32", "pad_h", 9, {"default": 0}),
        (_O, "uint32", "pad_w", 10, {"default": 0}),
        (_O, "uint32", "kernel_size", 2, {}),
        (_O, "uint32", "kernel_h", 5, {}),
        (_O, "uint32", "kernel_w", 6, {}),
        (_O, "uint32", "stride", 3, {"default": 1}),
        (_O, "uint32", "stride_h", 7, {}),
        (_O, "uint32", "stride_w", 8, {}),
        (_O, "PoolingParameter.Engine", "engine", 11, {"default": "DEFAULT"}),
        (_O, "bool", "global_pooling", 12, {"default": False}),
        (_O, "PoolingParameter.RoundMode", "round_mode", 13, {"default": "CEIL"}),
    ],
    "ReLUParameter": [
        (_O, "float", "negative_slope", 1, {"default": 0}),
        (_O, "ReLUParameter.Engine", "engine", 2, {"default": "DEFAULT"}),
    ],
    "ReshapeParameter": [
        (_O, "BlobShape", "shape", 1, {}),
        (_O, "int32", "axis", 2, {"default": 0}),
        (_O, "int32", "num_axes", 3, {"default": -1}),
    ],
    "ScaleParameter": [
        (_O, "int32", "axis", 1, {"default": 1}),
        (_O, "int32", "num_axes", 2, {"default": 1}),
        (_O, "FillerParameter", "filler", 3, {}),
        (_O, "bool", "bias_term", 4, {"default": False}),
        (_O, "FillerParameter", "bias_filler", 5, {}),
    ],
    "SigmoidParameter": [(_O, "SigmoidParameter.Engine", "engine", 1, {"default": "DEFAULT"})],
    "SoftmaxParameter": [
        (_O, "SoftmaxParameter.Engine", "engine", 1, {"default": "DEFAULT"}),
        (_O, "int32", "axis", 2, {"default": 1}),
    ],
    "SliceParameter": [
        (_O, "int32", "axis", 3, {"default": 1}),
        (_R, "uint32", "slice_point", 2, {}),
        (_O, "uint32", "slice_dim", 1, {"default": 1}),
    ],
    "SPPParameter": [
        (_O, "uint32", "pyramid_height", 1, {}),
        (_O, "SPPParameter.PoolMethod", "pool", 2, {"default": "MAX"}),
        (_O, "SPPParameter.Engine", "engine", 6, {"default": "DEFAULT"}),
    ],
    # The authors' fork (SPEC section 9).
    "InterpParameter": [
        (_O, "int32", "height", 1, {"default": 0}),
        (_O, "int32", "width", 2, {"default": 0}),
        (_O, "int32", "zoom_factor", 3, {"default": 1}),
        (_O, "int32", "shrink_factor", 4, {"default": 1}),
        (_O, "int32", "pad_beg", 5, {"default": 0}),
        (_O, "int32", "pad_end", 6, {"default": 0}),
    ],
    "HumanAttDataParameter": [
        (_O, "string", "source", 1, {}),
        (_O, "uint32", "batch_size", 4, {}),
        (_O, "float", "scale", 2, {"default": 1}),
        (_O, "string", "mean_file", 3, {}),
        (_O, "uint32", "crop_size", 5, {"default": 0}),
        (_O, "bool", "mirror", 6, {"default": False}),
        (_O, "uint32", "rand_skip", 7, {"default": 0}),
        (_O, "bool", "shuffle", 8, {"default": False}),
        (_O, "uint32", "new_height", 9, {"default": 0}),
        (_O, "uint32", "new_width", 10, {"default": 0}),
        (_O, "bool", "is_color", 11, {"default": True}),
        (_O, "string", "root_folder", 12, {"default": ""}),
        (_O, "uint32", "att_num", 13, {}),
        (_O, "uint32", "bbox_num", 14, {}),
        (_R, "float", "scale_factors", 15, {}),
    ],
    "ROIPoolingParameter": [
        (_O, "uint32", "pooled_h", 1, {"default": 0}),
        (_O, "uint32", "pooled_w", 2, {"default": 0}),
        (_O, "float", "spatial_scale", 3, {"default": 1}),
        (_O, "float", "score_scale", 4, {"default": 1}),
        (_O, "float", "score_bias", 5, {"default": 0}),
        # Unused by the released nets; their types in the fork are not documented.
        (_O, "int32", "top_cls", 6, {}),
        (_O, "int32", "norm_type", 7, {}),
        (_O, "float", "single_scale", 8, {}),
        (_O, "float", "origin_scale", 9, {}),
    ],
    # Legacy (V1) layers: only what old caffemodels and V1 prototxts of supported layer
    # types need. The *_param messages are shared with LayerParameter.
    "V1LayerParameter": [
        (_R, "string", "bottom", 2, {}),
        (_R, "string", "top", 3, {}),
        (_O, "string", "name", 4, {}),
        (_R, "NetStateRule", "include", 32, {}),
        (_R, "NetStateRule", "exclude", 33, {}),
        (_O, "V1LayerParameter.LayerType", "type", 5, {}),
        (_R, "BlobProto", "blobs", 6, {}),
        (_R, "string", "param", 1001, {}),
        (_R, "V1LayerParameter.DimCheckMode", "blob_share_mode", 1002, {}),
        (_R, "float", "blobs_lr", 7, {}),
        (_R, "float", "weight_decay", 8, {}),
        (_R, "float", "loss_weight", 35, {}),
        (_O, "ConcatParameter", "concat_param", 9, {}),
        (_O, "ConvolutionParameter", "convolution_param", 10, {}),
        (_O, "DropoutParameter", "dropout_param", 12, {}),
        (_O, "InnerProductParameter", "inner_product_param", 17, {}),
        (_O, "PoolingParameter", "pooling_param", 19, {}),
        (_O, "EltwiseParameter", "eltwise_param", 24, {}),
        (_O, "ReLUParameter", "relu_param", 30, {}),
        (_O, "SliceParameter", "slice_param", 31, {}),
        (_O, "TransformationParameter", "transform_param", 36, {}),
        (_O, "SigmoidParameter", "sigmoid_param", 38, {}),
        (_O, "SoftmaxParameter", "softmax_param", 39, {}),
        (_O, "LossParameter", "loss_param", 42, {}),
        (_O, "V0LayerParameter", "layer", 1, {}),
    ],
    # Pre-2014 layers nested in V1 ones: only the name, type and weights are read.
    "V0LayerParameter": [
        (_O, "string", "name", 1, {}),
        (_O, "string", "type", 2, {}),
        (_O, "uint32", "num_output", 3, {}),
        (_O, "bool", "biasterm", 4, {"default": True}),
        (_O, "uint32", "pad", 7, {"default": 0}),
        (_O, "uint32", "kernelsize", 8, {}),
        (_O, "uint32", "group", 9, {"default": 1}),
        (_O, "uint32", "stride", 10, {"default": 1}),
        (_O, "V0LayerParameter.PoolMethod", "pool", 11, {"default": "MAX"}),
        (_O, "float", "dropout_ratio", 12, {"default": 0.5}),
        (_R, "BlobProto", "blobs", 50, {}),
        (_R, "float", "blobs_lr", 51, {}),
        (_R, "float", "weight_decay", 52, {}),
    ],
}


def _type_ref(type_name: str) -> str:
    return f".{PACKAGE}.{type_name}"


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="mlic/caffe/caffe_subset.proto", package=PACKAGE, syntax="proto2")
    msgs = {}
    for name in _MESSAGES:
        msgs[name] = fdp.message_type.add(name=name)
    for full, values in _ENUMS.items():
        parent, _, ename = full.rpartition(".")
        target = msgs[parent].enum_type if parent else fdp.enum_type
        enum = target.add(name=ename)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for name, fields in _MESSAGES.items():
        msg = msgs[name]
        for label, ftype, fname, number, opts in fields:
            f = msg.field.add(name=fname, number=number)
            f.label = _FD.LABEL_REPEATED if label == _R else _FD.LABEL_OPTIONAL
            if ftype in _SCALARS:
                f.type = _SCALARS[ftype]
            elif ftype in _ENUMS:
                f.type = _FD.TYPE_ENUM
                f.type_name = _type_ref(ftype)
            elif ftype in _MESSAGES:
                f.type = _FD.TYPE_MESSAGE
                f.type_name = _type_ref(ftype)
            else:
                raise AssertionError(f"schema: unknown type {ftype} for {name}.{fname}")
            if "default" in opts:
                d = opts["default"]
                if isinstance(d, bool):
                    f.default_value = "true" if d else "false"
                elif isinstance(d, float):
                    f.default_value = repr(d)
                else:
                    f.default_value = str(d)
            if opts.get("packed"):
                f.options.packed = True
    return fdp


_POOL = descriptor_pool.DescriptorPool()
FILE_DESCRIPTOR = _POOL.Add(_build_file())


def _cls(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


BlobShape = _cls("BlobShape")
BlobProto = _cls("BlobProto")
BlobProtoVector = _cls("BlobProtoVector")
FillerParameter = _cls("FillerParameter")
NetParameter = _cls("NetParameter")
SolverParameter = _cls("SolverParameter")
SolverState = _cls("SolverState")
NetState = _cls("NetState")
NetStateRule = _cls("NetStateRule")
ParamSpec = _cls("ParamSpec")
LayerParameter = _cls("LayerParameter")
V1LayerParameter = _cls("V1LayerParameter")
V0LayerParameter = _cls("V0LayerParameter")

TRAIN = 0
TEST = 1


def phase_value(phase) -> int:
    """TRAIN/TEST given as 'TRAIN', 'test', 0 or 1 -> the enum number."""
    if isinstance(phase, str):
        p = phase.strip().upper()
        if p in ("TRAIN", "TEST"):
            return TRAIN if p == "TRAIN" else TEST
    elif phase in (TRAIN, TEST) and not isinstance(phase, bool):
        return int(phase)
    raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")


def phase_name(phase: int) -> str:
    return "TRAIN" if phase == TRAIN else "TEST"


def enum_name(message, field: str) -> str:
    """The symbolic name of an enum field's value (e.g. 'MAX')."""
    fd = message.DESCRIPTOR.fields_by_name[field]
    return fd.enum_type.values_by_number[getattr(message, field)].name


def v1_type_name(number: int) -> str:
    return _POOL.FindEnumTypeByName(f"{PACKAGE}.V1LayerParameter.LayerType").values_by_number[number].name
