"""Few-shot object detection: the detector contract, the attention detector and the baselines."""
