from lelect.cli import main

main()
