from training.shapes_flow.train import main

if __name__ == "__main__":
    raise SystemExit(main())
