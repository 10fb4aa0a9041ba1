"""Allow ``python -m nucleilib ...``."""

if __name__ == "__main__":
    from nucleilib.cli import main
    raise SystemExit(main())
