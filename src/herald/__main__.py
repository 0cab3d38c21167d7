from herald.entrypoints.cli import main

main()
