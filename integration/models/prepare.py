"""Writes the models the model tests run and ONNX Runtime's outputs for them.

For each model NAME in OUT_DIR:
  NAME.onnx          the model
  NAME.input.npy     its input (f32, seeded random, or the held-out digits)
  NAME.output.npy    ONNX Runtime's output on that input (f32)
  NAME.logits.npy    and the input of its final Softmax, an output too
and for the trained classifier also digits.labels.npy (the true labels)
and digits.ort_labels.npy (the labels ONNX Runtime's full model predicts).
models.json lists them.

The light models compute their weights with ConstantOfShape: every output
channel of a layer is the same, and the final softmax is uniform. So that
the arithmetic is tested too, NAME_random is the same graph with those
weights replaced by seeded random ones (He-scaled, so activations stay in
range) stored as initializers.
"""

import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort

LIGHT = [
    "squeezenet",
    "resnet50",
    "shufflenet",
    "densenet121",
    "inception_v1",
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
]
# Those also run with random weights (the others' weights are hundreds of
# MB as initializers).
RANDOM = ["squeezenet", "resnet50", "shufflenet", "densenet121", "inception_v1"]


def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def real_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def randomized(model, seed):
    """`model` with every ConstantOfShape-made tensor that a Conv, Gemm or
    BatchNormalization consumes replaced by a seeded random initializer."""
    from onnx import numpy_helper
    rng = np.random.default_rng(seed)
    consumers = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    keep = []
    for n in model.graph.node:
        use = consumers.get(n.output[0], []) if n.op_type == "ConstantOfShape" else []
        if not use or n.input[0] not in inits:
            keep.append(n)
            continue
        shape = [int(d) for d in inits[n.input[0]]]
        op, idx = use[0][0].op_type, use[0][1]
        trans_b = any(a.name == "transB" and a.i for a in use[0][0].attribute)
        if op == "Conv" and idx == 1:
            v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif op == "Gemm" and idx == 1:
            v = rng.standard_normal(shape) * np.sqrt(1.0 / shape[1 if trans_b else 0])
        elif op == "BatchNormalization" and idx in (1, 4):
            v = rng.uniform(0.5, 1.5, shape)
        elif op in ("Conv", "Gemm", "BatchNormalization"):
            v = rng.normal(0.0, 0.1, shape)
        else:
            keep.append(n)
            continue
        model.graph.initializer.append(
            numpy_helper.from_array(v.astype(np.float32), n.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def with_logits(model):
    """Adds the input of the final Softmax as a graph output: the softmax
    of these models saturates or is uniform, the logits are not."""
    from onnx import TensorProto, helper
    soft = [n for n in model.graph.node if n.op_type == "Softmax"]
    if soft:
        model.graph.output.append(
            helper.make_tensor_value_info(soft[-1].input[0], TensorProto.FLOAT, None))
    return model


def save_run(out, name, model, inp, x, manifest):
    path = os.path.join(out, f"{name}.onnx")
    onnx.save(with_logits(model), path)
    ys = ort_session(path).run(None, {inp.name: x})
    np.save(os.path.join(out, f"{name}.input.npy"), x)
    np.save(os.path.join(out, f"{name}.output.npy"), ys[0].astype(np.float32))
    if len(ys) > 1:
        np.save(os.path.join(out, f"{name}.logits.npy"), ys[1].astype(np.float32))
    manifest[name] = {"input": list(x.shape), "output": list(ys[0].shape),
                      "output_range": float(ys[0].max() - ys[0].min()),
                      "logits_range": float(ys[-1].max() - ys[-1].min())}


def light(out, name, manifest):
    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data",
                       "light", f"light_{name}.onnx")
    model = onnx.load(src)
    (inp,) = real_inputs(model)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(14).random(shape, dtype=np.float32)
    save_run(out, name, model, inp, x, manifest)
    if name in RANDOM:
        save_run(out, f"{name}_random", randomized(onnx.load(src), 14), inp, x, manifest)


def digits(out, manifest):
    """An MLP trained here on scikit-learn's bundled digits; the NPU runs
    the part of the converted model that computes class probabilities."""
    from onnx.utils import extract_model
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=14,
                                          stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400,
                        random_state=14)
    clf.fit(xtr, ytr)
    full = to_onnx(clf, xtr[:1], options={id(clf): {"zipmap": False}},
                   target_opset=13)
    full_path = os.path.join(out, "digits.full.onnx")
    onnx.save(full, full_path)
    names = [o.name for o in full.graph.output]
    label, prob = names[0], names[1]
    sess = ort_session(full_path)
    ort_label, ort_prob = sess.run([label, prob], {full.graph.input[0].name: xte})
    path = os.path.join(out, "digits.onnx")
    extract_model(full_path, path, [full.graph.input[0].name], [prob])
    np.save(os.path.join(out, "digits.input.npy"), xte)
    np.save(os.path.join(out, "digits.output.npy"), ort_prob.astype(np.float32))
    np.save(os.path.join(out, "digits.labels.npy"), yte.astype(np.int64))
    np.save(os.path.join(out, "digits.ort_labels.npy"),
            np.asarray(ort_label).astype(np.int64))
    acc = float((np.asarray(ort_label) == yte).mean())
    manifest["digits"] = {"input": list(xte.shape), "output": list(ort_prob.shape),
                          "ort_accuracy": acc, "classes": clf.classes_.tolist()}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    manifest = {}
    for name in LIGHT:
        light(out, name, manifest)
    digits(out, manifest)
    with open(os.path.join(out, "models.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for k, v in manifest.items():
        print(f"models: {k}: {v}")


if __name__ == "__main__":
    main()
