from vxflow.cli import main

main()
