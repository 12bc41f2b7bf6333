"""Stage 5: learning. `train(cfg)` runs the loop; `load_model(run_dir)` reads a trained run."""
