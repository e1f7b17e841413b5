from slimforge.cli import main

main()
