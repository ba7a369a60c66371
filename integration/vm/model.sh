#!/bin/busybox sh
# Guest side of the real-guest model check: SqueezeNet (random weights, so
# the arithmetic counts) through the guest library's runner on
# /dev/accel/accel0, against ONNX Runtime's output computed on the host.
# Both guests run it at the same time.
M=/models/squeezenet_random
if accel-run --model $M.onnx --input $M.input.npy --expect $M.output.npy --runs 3; then
    echo "CHECK model PASS"
else
    echo "CHECK model FAIL"
fi
