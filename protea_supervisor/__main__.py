from protea_supervisor.cli import main

main()
