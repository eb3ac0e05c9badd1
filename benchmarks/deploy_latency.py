"""Deployment latency: MixMo's folded network against vanilla and a deep ensemble of 2, per runtime.

    python benchmarks/deploy_latency.py [--depth=28 --width=1 --image_size=32] [--threads=2]
        [--calls=1000] [--rounds=5] [--batch=256] [--batch_calls=3] [--json=PATH] [--quick]

Builds three float32 networks, WRN-28-1 on 32x32 by default (10 classes, weights as initialised:
the cost does not depend on their values): MixMo M = 2, vanilla, and a second vanilla for the deep
ensemble of two (DE-2: both networks run one after the other per call); exports each with
`mixmo_tf.deploy.tf_export` (SavedModel, ONNX, LiteRT, each checked against the network), then
times, in this one process, every network in four runtimes, each set to --threads threads:
  keras        the Keras network, `evaluation.predict.Predictor.from_network` (normalisation,
               then the forward pass as one tf.function: what `evaluate` runs), not `predict`;
  saved_model  the SavedModel's `serving_default`, loaded by tf.saved_model.load;
  onnx         ONNX Runtime's InferenceSession (SessionOptions intra/inter-op threads, no
               spinning: each session owns a thread pool, and an idle one busy-waiting slows the
               next session's call, i.e. the DE's second network, 3x on 2 cores);
  litert       ai-edge-litert's interpreter (num_threads), through its signature runner.
TensorFlow's intra- and inter-op pools are set to --threads before it runs anything. Every call
takes uint8 images and returns the outputs on the host. Batch-1 latency: p50 and p99 over
--calls calls of each network in each runtime; batch-256 throughput: images/s over the median
call. The calls are spread over --rounds interleaved rounds (every runtime and network in each
round, the networks' order rotating), so that machine noise hits all alike; the MixMo/vanilla
and MixMo/DE-2 cost ratios (time per call) are computed per round and reported as median and
range. Expected on a CPU: <= 1.05 and <= 0.55 in every runtime. --quick (WRN-10-1, 2 rounds of
10 calls, one batch call) checks that every path runs; its figures mean nothing.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)

RUNTIMES = ("keras", "saved_model", "onnx", "litert")
NETS = ("mixmo", "vanilla", "de2")
# CIFAR-10's channel statistics: the normalisation the artifacts hold (it does not change a cost).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depth", type=int, default=None, help="WRN depth (28; --quick: 10).")
  parser.add_argument("--width", type=int, default=1)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--threads", type=int, default=2, help="Threads of every runtime.")
  parser.add_argument("--calls", type=int, default=1000,
                      help="Batch-1 calls per network and runtime (at least; spread over rounds).")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batch", type=int, default=256, help="Batch of the throughput figure.")
  parser.add_argument("--batch_calls", type=int, default=3, help="Throughput calls per round.")
  parser.add_argument("--json", default="", help="Also write the figures as JSON here.")
  parser.add_argument("--quick", action="store_true", help="Smoke test: WRN-10-1, few calls.")
  args = parser.parse_args(argv)
  if args.quick:
    args.calls, args.rounds, args.batch_calls = 20, 2, 1
  args.depth = args.depth or (10 if args.quick else 28)
  if min(args.calls, args.rounds, args.batch, args.batch_calls, args.threads) < 1:
    parser.error("--calls, --rounds, --batch, --batch_calls and --threads must be >= 1.")
  return args


def set_tensorflow_threads(threads: int) -> None:
  """TensorFlow's intra- and inter-op thread pools, before it runs its first op."""
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)


def build_networks(args):
  """{name: [networks run one after the other per call]}: MixMo M = 2, vanilla, DE-2."""
  import keras

  from mixmo_tf.models import build_model
  nets = []
  for seed, members in ((0, 2), (1, 1), (2, 1)):
    keras.utils.set_random_seed(seed)
    nets.append(build_model("wide_resnet", depth=args.depth, width=args.width,
                            num_members=members, num_classes=10,
                            image_shape=(args.image_size, args.image_size, 3)))
  return {"mixmo": [nets[0]], "vanilla": [nets[1]], "de2": [nets[1], nets[2]]}


def runners(runtime, folders, networks, info, threads):
  """One uint8 images -> host outputs function per network of the call, for `runtime`."""
  if runtime == "keras":
    from mixmo_tf.deploy.precision import folded_float32
    from mixmo_tf.evaluation.predict import Predictor
    return [Predictor.from_network(folded_float32(n), info) for n in networks]
  if runtime == "saved_model":
    import tensorflow as tf
    fns = []
    for folder in folders:
      serve = tf.saved_model.load(os.path.join(folder, "saved_model")).signatures[
          "serving_default"]
      fns.append(lambda x, s=serve: {k: v.numpy() for k, v in s(images=tf.constant(x)).items()})
    return fns
  if runtime == "onnx":
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    # No busy-waiting between calls: with it, the DE's two sessions (two thread pools) took
    # 11.7 ms per batch-1 call against 2 x 2.0 ms for one, the idle pool spinning on the cores
    # the other needs; without, 3.8 ms against 2 x 2.2 ms (WRN-28-1, 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sessions = [onnxruntime.InferenceSession(os.path.join(f, "model.onnx"), options,
                                             providers=["CPUExecutionProvider"]) for f in folders]
    return [lambda x, s=s: s.run(None, {"images": x}) for s in sessions]
  from ai_edge_litert.interpreter import Interpreter
  runners_ = [Interpreter(model_path=os.path.join(f, "model.tflite"),
                          num_threads=threads).get_signature_runner() for f in folders]
  return [lambda x, r=r: r(images=x) for r in runners_]


def one_call(fns):
  """A function running the call's networks one after the other."""
  if len(fns) == 1:
    return fns[0]

  def run(x):
    for fn in fns:
      fn(x)
  return run


def percentile(values, q):
  ordered = sorted(values)
  return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def spread(values):
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "rounds": values}


def measure(args, calls):
  """Interleaved rounds over runtimes and networks: {(runtime, net): {"latency": [[s, ...] per
  round], "batch": [[s, ...] per round]}}."""
  import numpy as np
  rng = np.random.default_rng(0)
  size = (args.image_size, args.image_size, 3)
  one = rng.integers(0, 256, (1,) + size, dtype=np.uint8)
  many = rng.integers(0, 256, (args.batch,) + size, dtype=np.uint8)
  per_round = -(-args.calls // args.rounds)
  times = {key: {"latency": [], "batch": []} for key in calls}
  for fns in calls.values():  # Warm-up: traces, allocations, thread pools, both batch sizes.
    for _ in range(3 if args.quick else 20):
      fns["latency"](one)
    for _ in range(1 if args.quick else 2):
      fns["batch"](many)
  for round_ in range(args.rounds):
    for runtime in RUNTIMES:
      order = NETS[round_ % len(NETS):] + NETS[:round_ % len(NETS)]
      for net in order:
        fns, record = calls[(runtime, net)], times[(runtime, net)]
        latencies = []
        for _ in range(per_round):
          start = time.perf_counter()
          fns["latency"](one)
          latencies.append(time.perf_counter() - start)
        batches = []
        for _ in range(args.batch_calls):
          start = time.perf_counter()
          fns["batch"](many)
          batches.append(time.perf_counter() - start)
        record["latency"].append(latencies)
        record["batch"].append(batches)
    print(f"# round {round_ + 1}/{args.rounds} done", flush=True)
  return times


def summarise(args, times):
  """Per runtime and network: p50 / p99 latency (ms), images/s; per runtime: the cost ratios."""
  figures, ratios = {}, {}
  for runtime in RUNTIMES:
    figures[runtime] = {}
    for net in NETS:
      record = times[(runtime, net)]
      latencies = [t for r in record["latency"] for t in r]
      batch = statistics.median(t for r in record["batch"] for t in r)
      figures[runtime][net] = {"p50_ms": 1e3 * percentile(latencies, 50),
                               "p99_ms": 1e3 * percentile(latencies, 99),
                               "calls": len(latencies), "batch_img_s": args.batch / batch}
    ratio = lambda kind, other: spread([  # noqa: E731  (per-round cost ratio MixMo / other)
        statistics.median(m) / statistics.median(o) for m, o in
        zip(times[(runtime, "mixmo")][kind], times[(runtime, other)][kind])])
    ratios[runtime] = {"latency_mixmo_over_vanilla": ratio("latency", "vanilla"),
                       "latency_mixmo_over_de2": ratio("latency", "de2"),
                       "batch_mixmo_over_vanilla": ratio("batch", "vanilla"),
                       "batch_mixmo_over_de2": ratio("batch", "de2")}
  return figures, ratios


def environment(args):
  import keras
  import onnxruntime
  import tensorflow as tf
  import tf2onnx
  from importlib import metadata

  from mixmo_tf import runtime
  return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "cpu_model": runtime.cpu_model(), "cpu_count": os.cpu_count(),
          "threads": args.threads, "onednn": runtime.onednn_enabled(),
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "onnxruntime": onnxruntime.__version__, "tf2onnx": tf2onnx.__version__,
          "ai_edge_litert": metadata.version("ai-edge-litert"),
          "python": sys.version.split()[0]}


def print_report(args, env, figures, ratios):
  net = f"WRN-{args.depth}-{args.width}, {args.image_size}x{args.image_size}, 10 classes"
  print(f"\n# {env['date']}; CPU {env['cpu_model']}, {env['cpu_count']} cores, {args.threads} "
        f"threads in every runtime; TensorFlow {env['tensorflow']} (oneDNN "
        f"{'on' if env['onednn'] else 'off'}), Keras {env['keras']}, ONNX Runtime "
        f"{env['onnxruntime']} (tf2onnx {env['tf2onnx']}), ai-edge-litert {env['ai_edge_litert']}")
  print(f"\n{net}, float32: batch-1 latency (ms, over {figures['keras']['mixmo']['calls']} calls "
        f"each) and batch-{args.batch} throughput (img/s, median call)")
  print("| runtime | network | p50 ms | p99 ms | img/s |")
  print("|---|---|---|---|---|")
  names = {"mixmo": "MixMo M=2 (folded)", "vanilla": "vanilla", "de2": "DE of 2"}
  for runtime in RUNTIMES:
    for net_ in NETS:
      f = figures[runtime][net_]
      print(f"| {runtime} | {names[net_]} | {f['p50_ms']:.3f} | {f['p99_ms']:.3f} | "
            f"{f['batch_img_s']:.0f} |")
  print(f"\nCost ratios (time per call), median [min - max] over {args.rounds} rounds")
  print("| runtime | batch 1: MixMo/vanilla | batch 1: MixMo/DE-2 | "
        f"batch {args.batch}: MixMo/vanilla | batch {args.batch}: MixMo/DE-2 |")
  print("|---|---|---|---|---|")
  met = True
  for runtime in RUNTIMES:
    cells = []
    for key, bound in (("latency_mixmo_over_vanilla", 1.05), ("latency_mixmo_over_de2", 0.55),
                       ("batch_mixmo_over_vanilla", 1.05), ("batch_mixmo_over_de2", 0.55)):
      r = ratios[runtime][key]
      met = met and r["median"] <= bound
      cells.append(f"{r['median']:.3f} [{r['min']:.3f} - {r['max']:.3f}]")
    print(f"| {runtime} | " + " | ".join(cells) + " |")
  if env["onednn"]:
    print("\nTensorFlow runs with oneDNN (mixmo_tf's default, for training speed); on CPUs without "
          "AVX-512 its batch-1 calls can be several times slower than with "
          "TF_ENABLE_ONEDNN_OPTS=0 (set before running this script to compare).")
  print(f"\nExpected MixMo/vanilla <= 1.05 and MixMo/DE-2 <= 0.55 (medians) in every runtime: "
        f"{'met' if met else 'NOT met'}.")
  return met


def main(argv=None):
  args = parse_args(argv)
  import mixmo_tf  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)
  set_tensorflow_threads(args.threads)
  from mixmo_tf.data.info import DataInfo
  from mixmo_tf.deploy import formats, tf_export
  formats.check_requirements(formats.DEFAULT_FORMATS)
  info = DataInfo("cifar10-shaped", 10, (args.image_size, args.image_size, 3), 0, 0, MEAN, STD,
                  4, True)
  networks = build_networks(args)
  with tempfile.TemporaryDirectory() as tmp:
    folders = {}
    start = time.perf_counter()
    for i, net in enumerate(networks["mixmo"] + networks["de2"]):
      folders[id(net)] = os.path.join(tmp, str(i))
      tf_export.export_network(net, info, folders[id(net)], formats.DEFAULT_FORMATS)
    print(f"# exported 3 networks in 3 formats, each checked, in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    calls = {}
    for runtime in RUNTIMES:
      for net in NETS:
        nets = networks[net]
        make = lambda: one_call(runners(runtime, [folders[id(n)] for n in nets],  # noqa: E731
                                        nets, info, args.threads))
        calls[(runtime, net)] = {"latency": make(), "batch": make()}  # LiteRT: one size each.
    times = measure(args, calls)
  figures, ratios = summarise(args, times)
  env = environment(args)
  met = print_report(args, env, figures, ratios)
  if args.json:
    payload = {"net": f"WRN-{args.depth}-{args.width}", "image_size": args.image_size,
               "batch": args.batch, "calls": args.calls, "rounds": args.rounds,
               "quick": args.quick, "latency_and_throughput": figures, "ratios": ratios,
               "expected_met": met, "env": env}
    with open(args.json, "w") as f:
      json.dump(payload, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
