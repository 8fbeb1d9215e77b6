"""Realistic mutations of the training, pipeline/hash and book-runner code, each with the tests that should catch it.

Each entry changes one snippet of one file (the snippet must occur exactly once). ``run.py`` applies them one at a
time to a copy of the repository and runs the listed tests; a mutation is caught when a test fails.
Not part of the default test run (no ``test_`` prefix).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    id: str
    area: str
    file: str
    old: str
    new: str
    what: str


TRAIN = "qpmlib/train.py"
LOSSES = "qpmlib/losses.py"
PIPELINE = "qpmlib/runs/dino_qpm.py"
EVALUATE = "qpmlib/runs/evaluate.py"
BOOK = "qpmlib/book/runner.py"

#: Tests run for each area (``-x``: the first failure ends the run).
AREA_TESTS = {
    "training": ["tests/test_train.py", "tests/test_model_metrics.py", "tests/test_pinned_run.py"],
    "losses": ["tests/test_losses.py", "tests/test_pinned_run.py"],
    "stage hashes": ["tests/test_stage_hashes.py", "tests/test_dino_qpm.py"],
    "pipeline metrics": ["tests/test_model_metrics.py", "tests/test_pinned_run.py", "tests/test_dino_qpm.py"],
    "book runner": ["tests/test_runner.py"],
    "locks and loading": ["tests/test_files.py", "tests/test_train.py", "tests/test_results.py",
                          "tests/test_concurrency.py"],
}

M = Mutation
MUTATIONS = [
    # ------------------------------------------------------------------ training loop (qpmlib/train.py)
    M("T01", "training", TRAIN, "        opt.eval()\n        reps.write_back()", "        reps.write_back()",
      "schedule-free: opt.eval() forgotten, the model keeps the training-time weights"),
    M("T02", "training", TRAIN, "        reps.train()\n        opt.train()\n", "        reps.train()\n",
      "schedule-free: opt.train() forgotten before an epoch"),
    M("T03", "training", TRAIN, "perms = [torch.randperm(n, generator=g).numpy() for g in shufflers]",
      "perms = [np.arange(n) for g in shufflers]", "no shuffling"),
    M("T04", "training", TRAIN, ".bernoulli_(1 - p_drop, generator=g)", ".bernoulli_(p_drop, generator=g)",
      "dropout keeps units with probability p instead of 1 - p"),
    M("T05", "training", TRAIN, "for g in droppers]).div_(1 - p_drop)", "for g in droppers])",
      "dropout mask not rescaled by 1 / (1 - p)"),
    M("T06", "training", TRAIN, "droppers = [torch.Generator(device=dev).manual_seed(s) for s in seeds]",
      "droppers = [torch.Generator(device=dev).manual_seed(0) for s in seeds]",
      "every seed draws the same dropout masks"),
    M("T07", "training", TRAIN, "l1_fv=self.st.l1_fv, fdl_scale=self.st.fdl_scale)", "l1_fv=self.st.l1_fv)",
      "fdl_scale not passed to the loss (the paper variant silently runs the reference one)"),
    M("T08", "training", TRAIN, "fdl=self.st.fdl, l1_fm=self.st.l1_fm,", "fdl=self.st.fdl, l1_fm=self.st.l1_fv,",
      "lambda_L1-FM takes the value of lambda_L1-FV"),
    M("T09", "training", TRAIN, "betas=(0.9, 0.999)", "betas=(0.9, 0.99)", "wrong Adam beta2"),
    M("T10", "training", TRAIN, "weight_decay=st.weight_decay, warmup_steps=0)",
      "weight_decay=st.weight_decay, warmup_steps=5)", "warm-up steps added"),
    M("T11", "training", TRAIN, "(epoch % TEST_EVERY == 0 or epoch == st.epochs - 1)", "(epoch % TEST_EVERY == 0)",
      "last epoch not tested"),
    M("T12", "training", TRAIN, '"loss": losses[:, i].mean().item()', '"loss": losses[:, i].sum().item()',
      "epoch loss summed over batches instead of averaged"),
    M("T13", "training", TRAIN, '"accuracy": correct[i].item() / n,', '"accuracy": correct[i].item() / n_batches,',
      "training accuracy divided by the number of batches"),
    M("T14", "training", TRAIN, "        m.momentum = None\n", "", "BN recalibration uses the EMA, not the cumulative mean"),
    M("T15", "training", TRAIN, "_save_checkpoint(ckpt, key, epoch + 1,", "_save_checkpoint(ckpt, key, epoch,",
      "checkpoint records the wrong epoch: a resumed run repeats one"),
    M("T16", "training", TRAIN, 'zip(shufflers + droppers, state["shufflers"] + state["droppers"])',
      'zip(shufflers + droppers, state["droppers"] + state["shufflers"])',
      "resume restores the shuffling and dropout generators swapped"),
    M("T17", "training", TRAIN, "    for h in histories:\n        h.resumed_at = start\n", "",
      "resumed_at never recorded"),
    M("T18", "training", TRAIN, "    model.eval()\n    data = feed.data\n", "    data = feed.data\n",
      "evaluation runs in training mode (dropout on, batch statistics)"),
    M("T19", "training", TRAIN, "out[:, self.n_patches] = _rows(self.cls, sorted_idx)[inv]",
      "out[:, self.n_patches] = _rows(self.cls, sorted_idx)", "CLS rows not put back in request order"),
    M("T20", "training", TRAIN, "n_batches = (n + bs - 1) // bs", "n_batches = n // bs", "last partial batch dropped"),
    M("T21", "training", TRAIN, "    return float(layer.p) if isinstance(layer, nn.Dropout) else 0.0",
      "    return 0.0", "dense-head dropout never applied"),
    M("T22", "training", TRAIN, '"stage": dataclasses.asdict(st), "seeds": seeds, "n": len(data)}',
      '"stage": dataclasses.asdict(st), "n": len(data)}', "checkpoint key ignores the seeds: resume across seeds"),
    M("T23", "training", TRAIN, "cfg.dense_batch_size, cfg.dense_lr, cfg.dense_weight_decay,\n                           cfg.dense_fdl,",
      "cfg.dense_batch_size, cfg.dense_lr, cfg.dense_weight_decay,\n                           cfg.ft_fdl,",
      "dense stage uses the fine-tune FDL weight"),
    M("T24", "training", TRAIN, "return StageConfig(\"finetune\", cfg.ft_epochs, cfg.ft_batch_size,",
      "return StageConfig(\"finetune\", cfg.ft_epochs, cfg.dense_batch_size,", "fine-tune uses the dense batch size"),
    M("T25", "training", TRAIN, 'if name.endswith("epochs") and (not isinstance(value, int) or value < 0):',
      'if name.endswith("epochs") and (not isinstance(value, int) or value < -1):', "negative epochs accepted"),
    M("T26", "training", TRAIN, "            _recalibrate_bn(model, feed, n, bs)\n", "            pass\n",
      "recalibrate_bn=True does nothing"),
    M("T27", "training", TRAIN, "correct += hits", "correct += hits * 0 + len(y[0])", "training accuracy always 1"),
    # ------------------------------------------------------------------ losses (training details)
    M("L01", "losses", LOSSES, "soft = F.softmax(maps.flatten(2), dim=2)", "soft = F.softmax(maps.flatten(2), dim=1)",
      "FDL softmax over features instead of positions"),
    M("L02", "losses", LOSSES, "per_sample = (omega[..., None] * soft).max(dim=1).values.sum(dim=1)",
      "per_sample = (omega[..., None] * soft).max(dim=1).values.mean(dim=1)", "FDL mean over positions"),
    M("L03", "losses", LOSSES, "w = weight[logits.argmax(dim=1)].abs()", "w = weight[logits.argmax(dim=1)]",
      "FDL uses signed weights"),
    M("L04", "losses", LOSSES, "omega = w / (w.norm(dim=1, keepdim=True) + 1e-5)",
      "omega = w / (w.norm(p=1, dim=1, keepdim=True) + 1e-5)", "FDL weights L1-normalised"),
    M("L05", "losses", LOSSES, "return -beta * per_sample.mean()", "return -beta * per_sample.sum()",
      "FDL summed over the batch"),
    M("L06", "losses", LOSSES, '(v / v.max(dim=1, keepdim=True).values.clamp_min(1e-6))',
      '(v / v.max().clamp_min(1e-6))', "FDL scale by the batch maximum"),
    M("L07", "losses", LOSSES, 'v = features if scale == "features" else maps.mean(dim=(2, 3))',
      'v = maps.mean(dim=(2, 3)) if scale == "features" else features', "FDL scale variants swapped"),
    M("L08", "losses", LOSSES, "term = l1_fv * l1_feature_vector(out.features)",
      "term = l1_fv * l1_feature_vector(out.features, norm_with_max=True)", "L1-FV normalised by the max"),
    M("L09", "losses", LOSSES, "    return maps.abs().mean()", "    return maps.abs().sum(dim=(2, 3)).mean()",
      "L1-FM summed over positions"),
    M("L10", "losses", LOSSES, "    ce = F.cross_entropy(out.logits, labels)",
      "    ce = F.cross_entropy(out.logits, labels, reduction=\"sum\")", "cross-entropy summed over the batch"),
    # ------------------------------------------------------------------ stage hashes (qpmlib/runs/dino_qpm.py)
    M("H01", "stage hashes", PIPELINE,
      '"backbone": {k: v for k, v in dataclasses.asdict(prof.backbone).items() if k != "batch_size"},',
      '"backbone": dataclasses.asdict(prof.backbone),', "extraction batch size in the hash (needless recomputation)"),
    M("H02", "stage hashes", PIPELINE,
      'model = {k: v for k, v in dataclasses.asdict(prof.model).items() if k != "standardise"}',
      'model = dataclasses.asdict(prof.model)', "standardise in the dense hash"),
    M("H03", "stage hashes", PIPELINE, '        "recalibrate_bn": prof.train.recalibrate_bn,\n', "",
      "recalibrate_bn missing from the dense hash: stale dense results served"),
    M("H04", "stage hashes", PIPELINE, 'qp_cfg = dense | {"qp": dataclasses.asdict(prof.qp)}',
      'qp_cfg = base | {"qp": dataclasses.asdict(prof.qp)}', "the QP hash does not contain the dense stage"),
    M("H05", "stage hashes", PIPELINE, '"finetune": dataclasses.asdict(stage_config(prof.train, "finetune")),',
      '"finetune": dataclasses.asdict(stage_config(prof.train, "dense")),', "fine-tune fields not in the QPM hash"),
    M("H06", "stage hashes", PIPELINE, 'inputs = {k: v for k, v in inputs.items() if k != "root"}',
      'inputs = dict(inputs)', "the data path of this machine in the hash"),
    M("H07", "stage hashes", PIPELINE, '        "seed": seed,\n        "data"', '        "data"',
      "the seed is not part of the hash"),
    M("H08", "stage hashes", PIPELINE, '        "standardise": prof.model.standardise,\n', "",
      "standardise missing from the QPM hash"),
    M("H09", "stage hashes", PIPELINE, '"embeddings": {"train": embedding_id(train_inputs), "test": embedding_id(test_inputs)},',
      '"embeddings": {"train": embedding_id(train_inputs)},', "the test embeddings are not part of the hash"),
    M("H10", "stage hashes", PIPELINE, 'model["last_layer_bn_relu"] = prof.model.last_layer_bn_relu',
      'model.pop("last_layer_bn_relu")', "last_layer_bn_relu missing from the dense hash"),
    # ------------------------------------------------------------------ pipeline metrics
    M("P01", "pipeline metrics", EVALUATE, "rows = weight[ev.predictions][:, rel]", "rows = weight[ev.labels][:, rel]",
      "metrics use the label's weights, not the predicted class's"),
    M("P02", "pipeline metrics", EVALUATE, "# (N_c, K)\n    rel = np.flatnonzero((weight != 0).any(axis=0))",
      "# (N_c, K)\n    rel = np.arange(weight.shape[1])", "features without weight kept in the metrics"),
    M("P03", "pipeline metrics", EVALUATE, '"class_independence": qmetrics.class_independence(train_feats[:, rel], train.labels),',
      '"class_independence": qmetrics.class_independence(ev.features[:, rel], ev.labels),',
      "class independence on test features"),
    M("P04", "pipeline metrics", EVALUATE, "if (weight != 0).sum(axis=1).max() >= k else None",
      "if (weight != 0).sum(axis=1).max() > k else None", "SID@k skipped when a class has exactly k features"),
    M("P05", "pipeline metrics", PIPELINE, '"mean": feats.mean(axis=0), "std": feats.std(axis=0)}',
      '"mean": feats.mean(axis=0), "std": feats.std(axis=0, ddof=1)}', "sample std for the standardisation"),
    M("P06", "pipeline metrics", EVALUATE, '"pred": ev.predictions.astype(np.int64)', '"pred": ev.labels.astype(np.int64)',
      "stored predictions are the labels"),
    M("P07", "pipeline metrics", PIPELINE, "standardise=standardise)\n            models.append(model)",
      "standardise=True)\n            models.append(model)", "fine-tune ignores model.standardise"),
    M("P08", "pipeline metrics", PIPELINE, "qp.r_threshold(R, q.n_selected, mode=q.r_mode)",
      'qp.r_threshold(R, q.n_selected, mode="dinoqpm")', "qp.r_mode ignored"),
    M("P09", "pipeline metrics", PIPELINE, 'sel["assignment"].float(), stats["mean"], stats["std"],',
      'sel["assignment"].float(), stats["std"], stats["mean"],', "sparse head gets the mean and std swapped"),
    M("P10", "pipeline metrics", PIPELINE, "recalibrate_bn=self.prof.train.recalibrate_bn, verbose=self.verbose)",
      "recalibrate_bn=False, verbose=self.verbose)", "train.recalibrate_bn ignored"),
    M("P11", "pipeline metrics", EVALUATE, '"accuracy": qmetrics.accuracy(ev.logits, ev.labels),',
      '"accuracy": qmetrics.accuracy(ev.logits, train.labels[: len(ev.labels)]),', "accuracy against other labels"),
    # ------------------------------------------------------------------ book runner
    M("B01", "book runner", BOOK, 'blob = json.dumps({"cells": cells, "parameters": parameters, "code": code}, sort_keys=True)',
      'blob = json.dumps({"cells": cells, "code": code}, sort_keys=True)', "parameters missing from the re-run key"),
    M("B02", "book runner", BOOK, 'cells = [(c["cell_type"], c.get("metadata", {}).get("tags", []), "".join(c["source"])) for c in nb["cells"]]',
      'cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]', "cell tags missing from the re-run key"),
    M("B03", "book runner", BOOK, 'for f in (REPO_ROOT / "qpmlib").rglob("*")', 'for f in (REPO_ROOT / "qpmlib").rglob("*.py")',
      "only .py files of the library in the key"),
    M("B04", "book runner", BOOK, 'for f in library + [REPO_ROOT / "requirements.txt"]:', "for f in library:",
      "the pinned requirements missing from the key"),
    M("B05", "book runner", BOOK, "h.update(len(name).to_bytes(8, \"little\") + name + len(data).to_bytes(8, \"little\") + data)",
      "h.update(data)", "file names missing from the key (a rename keeps it)"),
    M("B06", "book runner", BOOK, "        if INJECTED_TAG in cell.get(\"metadata\", {}).get(\"tags\", []):\n",
      "        if False:\n", "failure message counts the injected parameters cell"),
    M("B07", "book runner", BOOK, "            value = yaml.safe_load(text)", "            value = text",
      "-p values passed as strings, not parsed"),
    M("B08", "book runner", BOOK, "if args.profile is not None and given != args.profile:", "if False:",
      "-p profile silently overrides --profile"),
    M("B09", "book runner", BOOK, "                    parameters=parameters,\n", "                    parameters={\"profile\": profile},\n",
      "-p parameters never reach papermill"),
    M("B10", "book runner", BOOK, "if not force and target.exists() and _executed_key(target) == key:",
      "if not force and target.exists():", "an outdated executed chapter is reused"),
    M("B11", "book runner", BOOK, "    return [c for c in available if c.name in wanted]",
      "    return [by_name[n] for n in dict.fromkeys(names)]", "selected chapters run in the order given"),
    M("B12", "book runner", BOOK, "    unknown = sorted(set(parameters) - declared)", "    unknown = []",
      "undeclared parameters injected silently"),
    M("B13", "book runner", BOOK, "    if not names:\n        raise ValueError", "    if False:\n        raise ValueError",
      "--chapters without names runs every chapter"),
    M("B14", "book runner", BOOK, "        if not _plain_value(value):", "        if False:",
      "a YAML date is injected as arithmetic"),
    # ------------------------------------------------------------------ locks and safe loading
    M("S01", "locks and loading", TRAIN, "torch.load(path, map_location=device, weights_only=True)",
      "torch.load(path, map_location=device, weights_only=False)", "checkpoints loaded with pickle"),
    M("S02", "locks and loading", TRAIN,
      "        lock = file_lock(Path(run_dir) / LOCK_FILE.format(stage=st.stage), what=f\"the {st.stage} stage in {run_dir}\")",
      "        lock = contextlib.nullcontext()", "no lock on a stage's work folder"),
    M("S03", "locks and loading", "qpmlib/results.py", "        with self.lock(config):\n            found, _ = self._find(config)\n",
      "        if True:\n            found = None\n", "get_or_run computes without the lock and recheck"),
    M("S04", "locks and loading", "qpmlib/files.py", "            os.fsync(fh.fileno())\n        os.replace(tmp, path)",
      "        os.replace(tmp, path)", "atomic write without fsync"),
]
