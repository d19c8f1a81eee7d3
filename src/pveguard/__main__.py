from pveguard.cli import main

main()
