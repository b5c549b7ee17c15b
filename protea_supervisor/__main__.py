from protea_supervisor.cli.main import main

main()
