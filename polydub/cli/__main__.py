from polydub.cli import main

main()
