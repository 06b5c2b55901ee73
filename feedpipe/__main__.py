from feedpipe.cli import main

main()
