"""Names of what a trial and a study record. The report reads only these."""

# Trial user attributes.
ARCH = "arch"  # spec string of the deployed network (after pruning): rebuilds it
ARCH_SAMPLED = "arch_sampled"  # spec string as sampled, before pruning
COMPRESSION = "compression"
PRUNE_RATIO = "prune_ratio"  # per-stage pruning (one's own network): the mean of STAGE_RATIOS
STAGE_RATIOS = "stage_ratios"  # one's own network pruned per stage: each stage's share, first stage first
CHANNEL_ROUND = "channel_round"
QUANT = "quant"
CALIB_METHOD = "calib_method"
INT8_TYPES = "int8_types"  # int8-static only: {"activations", "weights", "weight_bits"} from the target
PARAMS = "params"
PARAMS_BEFORE_PRUNE = "params_before_prune"
MACS = "macs"
SIZE_BYTES = "size_bytes"  # the deployed ONNX file
SIZE_BYTES_FP32 = "size_bytes_fp32"  # the fp32 export of the same (pruned) network
ACCURACY = "accuracy"  # validation split, deployed ONNX file under ONNX Runtime
ACCURACY_BEFORE_QUANT = "accuracy_before_quant"  # validation split, fp32 ONNX
ACCURACY_ON_TARGET = "accuracy_on_target"  # validation split, deployed file run by the board agent
PARITY_MAX_DIFF = "parity_max_abs_diff"
LATENCY_P50 = "latency_ms_p50"
LATENCY_P90 = "latency_ms_p90"
LATENCY = "latency"  # all statistics of the measurement
LATENCY_CACHED = "latency_cached"  # the measurement came from the cache
TARGET = "target"
MEASURED_ON = "measured_on"  # host, cpu, arch, onnxruntime version, emulated
ONNX_SHA256 = "onnx_sha256"  # key of the deployed file in the model store
CONSTRAINT_VIOLATION = "constraint_violation"  # per constraint, > 0 means broken
REJECTED = "rejected"  # why the cost stage refused the candidate before training
FAILED_STAGE = "failed_stage"
FAIL_REASON = "fail_reason"
SECONDS_PREFIX = "seconds_"  # seconds_<stage> for each stage of the trial
TRAIN_LOSS = "train_loss"
WORKER = "worker"  # {"host", "pid"} of the process that ran the trial
BASELINE = "baseline"  # the name of a hand-designed reference network (an enqueued trial), e.g. mnv3-small-0.5-fp32
ORIGINAL_BASELINE = "original-"  # the baselines of a study of one's own network: the network itself, e.g. original-fp32
LEARNING_CURVE = "learning_curve"  # validation accuracy at each of early_stop.curve_fractions of proxy training
EARLY_STOPPED = "early_stopped"  # why the trial was stopped during training (early_stop.Stop.as_dict, and a reason)
TRAINED_WEIGHTS = "trained_weights_sha256"  # baselines: the trained, unpruned weights in the store, for the twin
TRAINED_BY = "trained_by"  # a baseline that took the weights of its twin (same network, other quantization)
PROBE = "probe"  # {"latency_ms", "size_kb"} of the untrained network of the final shape, measured before training
FINETUNE_SECONDS = "finetune_seconds"  # of seconds_prune: the fine-tunes' training
# Own-model trials: per prune step, [held-out accuracy before its fine-tune, after]; the
# fine-tune was undone where after < before (objective.prune_and_finetune).
FINETUNE_JUDGED = "finetune_judged"
CURVE_SECONDS = "curve_seconds"  # of seconds_train: evaluating the learning curve
REPEAT_OF = "repeat_of"  # the number of an earlier trial with the same candidate: not trained again
RETRIED_FROM = "retried_from"  # the number of the trial whose worker died: this one runs its candidate again
# What an enqueued trial is given besides its parameters (baselines.enqueue_baselines):
# a retried one is given it again, and nothing else of the dead run.
ENQUEUED_WITH = (BASELINE, ARCH_SAMPLED)

# Optuna's trial system attributes. An enqueued trial's parameters; and those of a
# retried trial as Optuna's RetryHeartbeatStaleTrialCallback records them, so that its
# retried_trial_number and retry_history read ours: the first trial of the candidate,
# and every trial of it before this one.
ENQUEUED_PARAMS = "fixed_params"
RETRY_ORIGINAL = "failed_trial"
RETRY_HISTORY = "retry_history"
TEACHER_SHA256 = "teacher_sha256"  # of the study's teacher's weights (shared_teacher): every trial's is the same

# Study user attributes.
STUDY_CONFIG = "config"
STUDY_TEST_ACCURACY = "test_accuracy"  # {trial number: test accuracy}, front members only
STUDY_BASELINES = "baselines"  # {"enqueued": [names], "skipped": {name: why}}, set once when the study starts
STUDY_TEACHER_ACCURACY = "teacher_accuracy"  # {sha256 of the teacher's ONNX file: its validation accuracy}
# The teacher's ONNX file a report last drew, kept in the model store so that reports on a
# machine without the teacher (or its data) draw and re-time it: {"onnx_sha256", "size_bytes",
# "latency": {"p50_ms", "p90_ms", "measured_on"} where and when first measured, or null}.
STUDY_TEACHER_FILE = "teacher_file"
STUDY_DATA = "data"  # Dataset.record() of the data the study started on: preprocessing, class names, identity
# board.timing.measuring_setup of the study's latencies (its first worker's): a worker that
# would time them otherwise is refused (runner.record_measuring_setup).
STUDY_MEASURING_SETUP = "measuring_setup"
STUDY_WORKERS_JOINED = "workers_joined"  # how many workers have run the trial loop: seeds each one's sampler
# finalized:<trial number>: one per finalized trial (``nas.py finalize``), so that runs
# finalizing other trials never overwrite each other's. A dict: ARCH, COMPRESSION, PARAMS,
# MACS, SIZE_BYTES, ACCURACY, ACCURACY_BEFORE_QUANT, (ACCURACY_ON_TARGET), LATENCY_P50,
# LATENCY_P90, MEASURED_ON, ONNX_SHA256, as a trial's, and the keys below.
FINALIZED_PREFIX = "finalized:"
FINALIZE_KENDALL_TAU = "finalize_kendall_tau"  # {"tau", "p_value", "trials"}: proxy vs final validation accuracy

# Keys of a finalized trial's dict, besides the trial attributes' names above.
FINAL_EPOCHS = "epochs"
FINAL_IMAGES = "images"  # training images, each seen FINAL_EPOCHS times
ACCURACY_TEST = "accuracy_test"  # test split, deployed ONNX file under ONNX Runtime
PROXY_ACCURACY = "proxy_accuracy"  # the trial's own validation accuracy: what the search ranked on
TRAIN_SECONDS = "train_seconds"  # training and fine-tune, across resumed runs
RESUMED_FROM_STEP = "resumed_from_step"  # the training step a killed run's checkpoint had reached (0: none)
TEACHER = "teacher"  # {"sha256", "source"} of the teacher distilled from: the study's

# Objectives, in order.
METRIC_NAMES = ("accuracy", "latency_ms", "size_kb")
DIRECTIONS = ("maximize", "minimize", "minimize")
