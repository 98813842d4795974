from convladder.cli import main

main()
