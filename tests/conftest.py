"""Its folder, tests/, goes on sys.path (pytest's default import mode): shared helpers such as tests/cli_process.py
are importable from every test folder."""
