from chat_cluster.cli import main

main()
