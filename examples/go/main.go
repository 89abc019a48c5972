// A stdlib-only HTTP server that cluster-init runs N times.
// The one change a server needs: listen on fd 3 when LISTEN_FDS says so.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func listener() (net.Listener, error) {
	if os.Getenv("LISTEN_FDS") == "" {
		port := os.Getenv("PORT")
		if port == "" {
			port = "3000"
		}
		return net.Listen("tcp", ":"+port)
	}
	// Ours, not our children's.
	for _, name := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		os.Unsetenv(name)
	}
	// FileListener dups the fd, so the *os.File can be closed right away.
	f := os.NewFile(3, "listen")
	defer f.Close()
	return net.FileListener(f)
}

func main() {
	worker := os.Getenv("CLUSTER_WORKER_ID")
	if worker == "" {
		worker = "-"
	}
	ln, err := listener()
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "hello from worker %s (pid %d)\n", worker, os.Getpid())
	})
	srv := &http.Server{Handler: mux}

	// SIGTERM: stop accepting, finish the requests in flight, then exit 0.
	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Shutdown(context.Background())
		close(done)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}
