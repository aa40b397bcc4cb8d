// loadgen drives chat nodes over WebSocket as users do, and reports delivery latency.
//
// It connects -clients sockets (spread over -nodes), each joins one of -channels
// channels, then one sender per step sends through the first node at each rate of
// -rates for -seconds; every frame's text is the send time in Unix nanoseconds, so
// a receiver's latency is its receive time minus that. One JSON line per step on
// stdout. Written in Go so that the generator is not what limits the figures: a
// Python one used 0.7 of a core at 50,000 deliveries a second on this machine.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type step struct {
	Rate      float64 `json:"rate"`
	Delivered int64   `json:"delivered"`
	Expected  int64   `json:"expected"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	CPU       float64 `json:"cpu_cores"`
	NodesCPU  float64 `json:"nodes_cpu_cores"`
}

// processCPU is the CPU seconds (user + system) the processes have used so far.
func processCPU(pids []string) float64 {
	total := 0.0
	for _, pid := range pids {
		if pid == "" {
			continue
		}
		raw, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			continue
		}
		fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
		user, _ := strconv.ParseFloat(fields[11], 64)
		system, _ := strconv.ParseFloat(fields[12], 64)
		total += (user + system) / 100 // USER_HZ
	}
	return total
}

var marker = []byte(`"text":"`)

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(usage.Utime) + tv(usage.Stime)
}

func dial(node, token string) (*websocket.Conn, error) {
	header := http.Header{}
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	dialer := websocket.Dialer{HandshakeTimeout: 60 * time.Second}
	conn, _, err := dialer.Dial(strings.Replace(node, "http", "ws", 1)+"/ws", header)
	return conn, err
}

func main() {
	nodes := flag.String("nodes", "", "comma-separated node base URLs (http://host:port)")
	token := flag.String("token", "", "bearer token for every socket")
	clients := flag.Int("clients", 1000, "subscribing sockets")
	channels := flag.Int("channels", 10, "channels (client i joins channel i % channels)")
	rates := flag.String("rates", "100", "comma-separated send rates (messages/s), one step each")
	seconds := flag.Float64("seconds", 3, "seconds per step")
	stopAbove := flag.Float64("stop-above", 50, "stop after a step whose p99 (ms) is above this")
	prefix := flag.String("prefix", "f", "channel name prefix")
	pids := flag.String("pids", "", "comma-separated pids of the servers whose CPU is reported")
	flag.Parse()
	urls := strings.Split(*nodes, ",")

	var delivered atomic.Int64
	var mu sync.Mutex
	var latencies []float64
	for i := 0; i < *clients; i++ {
		conn, err := dial(urls[i%len(urls)], *token)
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		join := fmt.Sprintf(`{"op":"join","channel":"%s%d"}`, *prefix, i%*channels)
		if err := conn.WriteMessage(websocket.TextMessage, []byte(join)); err != nil {
			fmt.Fprintln(os.Stderr, "join:", err)
			os.Exit(1)
		}
		timed := i%4 == 0 // every client counts, every fourth also times (as the Python one)
		go func(conn *websocket.Conn, timed bool) {
			for {
				_, data, err := conn.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				at := indexOf(data, marker)
				if at < 0 {
					continue
				}
				start := at + len(marker)
				end := start
				for end < len(data) && data[end] != '"' {
					end++
				}
				sent, err := strconv.ParseInt(string(data[start:end]), 10, 64)
				if err != nil {
					continue // not one of ours (history from an earlier run)
				}
				delivered.Add(1)
				if timed {
					mu.Lock()
					latencies = append(latencies, float64(now-sent)/1e6)
					mu.Unlock()
				}
			}
		}(conn, timed)
	}
	sender, err := dial(urls[0], *token)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sender:", err)
		os.Exit(1)
	}
	go func() { // acks and errors: read and drop
		for {
			if _, _, err := sender.ReadMessage(); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // the joins' answers (load shaping before the first step)

	encoder := json.NewEncoder(os.Stdout)
	for _, field := range strings.Split(*rates, ",") {
		rate, _ := strconv.ParseFloat(field, 64)
		mu.Lock()
		latencies = latencies[:0]
		mu.Unlock()
		delivered.Store(0)
		total := int(rate * *seconds)
		cpu0, nodes0, t0 := cpuSeconds(), processCPU(strings.Split(*pids, ",")), time.Now()
		for k := 0; k < total; k++ {
			due := t0.Add(time.Duration(float64(k) / rate * float64(time.Second)))
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			frame := fmt.Sprintf(`{"op":"send","channel":"%s%d","text":"%d"}`,
				*prefix, k%*channels, time.Now().UnixNano())
			if err := sender.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
				fmt.Fprintln(os.Stderr, "send:", err)
				os.Exit(1)
			}
		}
		time.Sleep(time.Second) // the last sends' deliveries
		elapsed := time.Since(t0).Seconds()
		mu.Lock()
		sorted := append([]float64(nil), latencies...)
		mu.Unlock()
		sort.Float64s(sorted)
		result := step{
			Rate:      rate,
			Delivered: delivered.Load(),
			Expected:  int64(total) * int64(*clients) / int64(*channels),
			P50:       quantile(sorted, 0.5),
			P99:       quantile(sorted, 0.99),
			Max:       quantile(sorted, 1),
			CPU:       (cpuSeconds() - cpu0) / elapsed,
			NodesCPU:  (processCPU(strings.Split(*pids, ",")) - nodes0) / elapsed,
		}
		_ = encoder.Encode(result)
		if result.P99 > *stopAbove || result.Delivered < result.Expected {
			break
		}
	}
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)) * q)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func indexOf(data, sub []byte) int {
	return bytes.Index(data, sub)
}
